!> Reader of the text model files of the Fortran-Keras Bridge (FKB), so FKB users can bring their
!> networks. Every layer line becomes one layer in file order (an activation line is an activation
!> layer at that place); unknown activation names are errors, never a sigmoid.
module colnn_fkb
  use colnn_kinds, only: wp, dp, i8
  use colnn_status
  use colnn_strings, only: str, next_token, count_tokens, parse_int, parse_real_dp, real_to_str
  use colnn_textio, only: text_reader_t
  use colnn_spec, only: layer_spec_t
  use colnn_model_file, only: model_header_t, parse_number_row
  implicit none
  private

  public :: read_fkb_file

  !> FKB fixes the batch normalization epsilon at this value (it is part of its format).
  character(len=*), parameter :: FKB_BN_EPSILON = '0.001'

contains

  subroutine read_fkb_file(path, header, specs, stat, errmsg)
    character(len=*), intent(in) :: path
    type(model_header_t), intent(out) :: header
    type(layer_spec_t), allocatable, intent(out) :: specs(:)
    integer, intent(out) :: stat
    character(len=:), allocatable, intent(out) :: errmsg
    type(text_reader_t) :: r
    call r%open(path, stat, errmsg)
    if (stat /= 0) return
    call read_body(r, header, specs, stat, errmsg)
    call r%close()
    if (stat /= 0 .and. allocated(specs)) deallocate (specs)
  end subroutine read_fkb_file

  subroutine next_data_line(r, what, stat, errmsg)
    type(text_reader_t), intent(inout) :: r
    character(len=*), intent(in) :: what
    integer, intent(out) :: stat
    character(len=:), allocatable, intent(out) :: errmsg
    logical :: eof
    call r%next_line(eof, stat, errmsg, skip_blank=.true.)
    if (stat /= 0) return
    if (eof) then
      stat = COLNN_ERR_FORMAT
      errmsg = r%path//': truncated FKB file: end of file where '//what//' was expected'
    end if
  end subroutine next_data_line

  subroutine read_body(r, header, specs, stat, errmsg)
    type(text_reader_t), intent(inout) :: r
    type(model_header_t), intent(inout) :: header
    type(layer_spec_t), allocatable, intent(out) :: specs(:)
    integer, intent(out) :: stat
    character(len=:), allocatable, intent(out) :: errmsg
    integer(i8) :: n_lines, ival
    integer :: k, pos, first, last, n_layers, width, n_dense, n_bn, i
    character(len=:), allocatable :: lkind, val, act
    character(len=32), allocatable :: kinds(:)
    integer, allocatable :: widths(:), n_ins(:)
    real(wp), allocatable :: values(:), flat(:)
    real(dp) :: rv
    logical :: ok, eof

    call next_data_line(r, 'the number of layer lines', stat, errmsg)
    if (stat /= 0) return
    call parse_int(trim(adjustl(r%buf(1:r%n))), n_lines, ok)
    if (.not. ok .or. n_lines < 2 .or. n_lines > r%file_size / 4 + 2) then
      stat = COLNN_ERR_FORMAT
      errmsg = r%where()//': an FKB file starts with its number of layer lines (an integer '// &
               '>= 2 that fits the file), found '''//r%buf(1:min(r%n, 40))//''''
      return
    end if
    header%precision = 'float64'
    allocate (character(len=256) :: header%meta(1))
    header%meta(1) = 'source FKB text file '//r%path
    allocate (specs(n_lines - 1), kinds(n_lines - 1), widths(n_lines - 1), n_ins(n_lines - 1))
    n_layers = 0
    width = 0
    do k = 1, int(n_lines)
      call next_data_line(r, 'layer line '//str(k)//' of '//str(n_lines), stat, errmsg)
      if (stat /= 0) return
      pos = 1
      call next_token(r%buf(1:r%n), pos, first, last)
      lkind = r%buf(first:last)
      call next_token(r%buf(1:r%n), pos, first, last)
      val = r%buf(first:max(first - 1, last))
      if (len(val) == 0) then
        stat = COLNN_ERR_FORMAT
        errmsg = r%where()//": FKB layer line '"//lkind//"' has no value"
        return
      end if
      if (count_tokens(r%buf(1:r%n)) /= 2) then
        stat = COLNN_ERR_FORMAT
        errmsg = r%where()//": an FKB layer line is 'KIND VALUE', found '"// &
                 r%buf(1:min(r%n, 60))//"'"
        return
      end if
      if (k == 1) then
        call parse_int(val, ival, ok)
        if (lkind /= 'input' .or. .not. ok .or. ival < 1 .or. ival > huge(1)) then
          stat = COLNN_ERR_FORMAT
          errmsg = r%where()//": the first FKB layer line must be 'input N', found '"// &
                   r%buf(1:min(r%n, 60))//"'"
          return
        end if
        header%n_inputs = int(ival)
        width = int(ival)
        cycle
      end if
      n_layers = n_layers + 1
      associate (s => specs(n_layers))
        s%source = r%path
        s%line = r%line_no
        kinds(n_layers) = lkind
        n_ins(n_layers) = width
        ! every layer but dense (a unit count) and dropout (kept as text) has one real value
        if (lkind /= 'dense' .and. lkind /= 'dropout') then
          call parse_real_dp(val, rv, ok, allow_d=.true.)
          if (.not. ok) then
            stat = COLNN_ERR_FORMAT
            errmsg = r%where()//": bad value '"//val//"' for FKB layer '"//lkind//"'"
            return
          end if
        end if
        select case (lkind)
        case ('dense')
          call parse_int(val, ival, ok)
          if (.not. ok .or. ival < 1 .or. ival > huge(1)) then
            stat = COLNN_ERR_FORMAT
            errmsg = r%where()//": bad unit count '"//val//"'"
            return
          end if
          ! its biases alone need ival values: refuse before anything is allocated
          if (ival > r%file_size / 2 + 1) then
            stat = COLNN_ERR_FORMAT
            errmsg = r%where()//': '//str(ival)//' units need more biases than a file of '// &
                     str(r%file_size)//' bytes holds'
            return
          end if
          s%type_name = 'dense'
          call s%set_text('name', 'dense_'//str(n_layers))
          call s%set_int('units', int(ival))
          call s%set_logical('use_bias', .true.)
          call s%set_text('activation', 'linear')
          width = int(ival)
        case ('dropout')
          s%type_name = 'dropout'
          call s%set_text('name', 'dropout_'//str(n_layers))
          call s%set_text('rate', val)
        case ('batchnormalization')
          s%type_name = 'batch_normalization'
          call s%set_text('name', 'batch_normalization_'//str(n_layers))
          call s%set_text('epsilon', FKB_BN_EPSILON)
          call s%set_logical('center', .true.)
          call s%set_logical('scale', .true.)
        case default
          select case (lkind)
          case ('linear', 'relu', 'tanh', 'sigmoid', 'softmax', 'softplus', 'selu', 'swish', 'exponential')
            act = lkind
          case ('leakyrelu')
            act = 'leaky_relu negative_slope='//real_to_str(real(rv, wp))
          case ('elu')
            act = 'elu alpha='//real_to_str(real(rv, wp))
          case default
            stat = COLNN_ERR_UNSUPPORTED
            errmsg = r%where()//": unknown FKB layer or activation '"//lkind//"'"
            return
          end select
          s%type_name = 'activation'
          call s%set_text('name', 'activation_'//str(n_layers))
          call s%set_text('activation', act)
        end select
        widths(n_layers) = width
      end associate
    end do
    header%n_layers = n_layers
    header%n_outputs = width
    if (n_layers < 1) then
      stat = COLNN_ERR_FORMAT
      errmsg = r%path//': the FKB file has no layers after its input'
      return
    end if

    call next_data_line(r, 'the learning rate', stat, errmsg)
    if (stat /= 0) return
    call parse_real_dp(r%buf(1:r%n), rv, ok, allow_d=.true.)
    if (.not. ok) then
      stat = COLNN_ERR_FORMAT
      errmsg = r%where()//": expected the learning rate, found '"//r%buf(1:min(r%n, 40))//"'"
      return
    end if
    header%meta = [character(len=256) :: header%meta(1), 'learning_rate '//trim(adjustl(r%buf(1:r%n)))]

    n_dense = count(kinds(1:n_layers) == 'dense')
    n_bn = count(kinds(1:n_layers) == 'batchnormalization')
    ! biases: one line per dense layer, in order
    do i = 1, n_layers
      if (kinds(i) /= 'dense') cycle
      call next_data_line(r, 'the biases of dense layer '//str(i), stat, errmsg)
      if (stat /= 0) return
      allocate (values(widths(i)))
      call parse_number_row(r%buf(1:r%n), widths(i), 'float64', values, &
                            r%where()//': biases of FKB dense layer '//str(i), stat, errmsg, &
                            allow_d=.true.)
      if (stat /= 0) return
      call specs(i)%add_tensor('bias', 1, [widths(i), 1], values, r%line_no)
    end do
    ! weights: one line per dense layer, the Keras kernel transposed and flattened, which
    ! column-major reading puts in w(in, out); the colnn tensor is kernel (in, out) row-major
    do i = 1, n_layers
      if (kinds(i) /= 'dense') cycle
      call next_data_line(r, 'the weights of dense layer '//str(i), stat, errmsg)
      if (stat /= 0) return
      if (int(n_ins(i), i8) * widths(i) > r%file_size / 2 + 1) then
        stat = COLNN_ERR_FORMAT
        errmsg = r%where()//': dense layer '//str(i)//' needs more weights than the file holds'
        return
      end if
      allocate (values(n_ins(i) * widths(i)))
      call parse_number_row(r%buf(1:r%n), n_ins(i) * widths(i), 'float64', values, &
                            r%where()//': weights of FKB dense layer '//str(i), stat, errmsg, &
                            allow_d=.true.)
      if (stat /= 0) return
      flat = reshape(transpose(reshape(values, [n_ins(i), widths(i)])), [size(values)])
      deallocate (values)
      call move_alloc(flat, values)
      call specs(i)%add_tensor('kernel', 2, [n_ins(i), widths(i)], values, r%line_no)
    end do
    ! batch normalization: beta, gamma, moving mean, moving variance
    do i = 1, n_layers
      if (kinds(i) /= 'batchnormalization') cycle
      do k = 1, 4
        call next_data_line(r, 'batch normalization parameters of layer '//str(i), stat, errmsg)
        if (stat /= 0) return
        ! the width comes from 'input N' or a dense layer: check it against the file first
        if (widths(i) > r%file_size / 2 + 1) then
          stat = COLNN_ERR_FORMAT
          errmsg = r%where()//': batch normalization layer '//str(i)//' needs '// &
                   str(widths(i))//' values a line, more than the file holds'
          return
        end if
        allocate (values(widths(i)))
        call parse_number_row(r%buf(1:r%n), widths(i), 'float64', values, &
                              r%where()//': batch normalization layer '//str(i), stat, errmsg, &
                              allow_d=.true.)
        if (stat /= 0) return
        select case (k)
        case (1); call specs(i)%add_tensor('beta', 1, [widths(i), 1], values, r%line_no)
        case (2); call specs(i)%add_tensor('gamma', 1, [widths(i), 1], values, r%line_no)
        case (3); call specs(i)%add_tensor('moving_mean', 1, [widths(i), 1], values, r%line_no)
        case (4); call specs(i)%add_tensor('moving_variance', 1, [widths(i), 1], values, r%line_no)
        end select
      end do
    end do
    call r%next_line(eof, stat, errmsg, skip_blank=.true.)
    if (stat /= 0) return
    if (.not. eof) then
      stat = COLNN_ERR_FORMAT
      errmsg = r%where()//": unexpected content after the last parameter vector: '"// &
               r%buf(1:min(r%n, 40))//"'"
      return
    end if
    specs = specs(1:n_layers)
  end subroutine read_body
end module colnn_fkb
